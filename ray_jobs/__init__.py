"""Mass generation on Ray: streamed datasets, replica groups of rank actors, exactly-once outputs, resume.

The only package that imports Ray.
"""
