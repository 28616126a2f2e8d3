"""Synthetic BadNets: face-like images, a sunglasses trigger, a backdoored DeepID and the lab's files.

faces (drawing), dataset (splits), train (the two-stage BadNet training), build (files on disk).
Nothing is imported here, so the CLI can read sizes without loading TensorFlow.
"""
