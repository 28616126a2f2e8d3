"""`badnet-prune report`: a sweep's results as one HTML page, report.md and CSV tables.

One module per part: data (read the database), tables (raw values, one format rule), figures
(matplotlib PNGs), samples (B and G labelling test images), pages (all of it assembled once),
html and markdown (the two writers), write (the files on disk).
"""
