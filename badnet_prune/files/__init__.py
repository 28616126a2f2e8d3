"""Model and data files: opened, checked as hostile input, and turned into arrays and models.

Above the numerics, below everything that stores or schedules: nothing here touches SQL or Celery.
"""
