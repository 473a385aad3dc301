"""A running endpoint, transport-neutral: requests, the queue, admission, batching, dispatch, stats. Loop thread
only.
"""
