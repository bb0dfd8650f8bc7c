"""Proactive pacing: the send-slot schedule of a deployment's quota (extra ``rpm``).

- :mod:`.file_schedule` - a locked file, shared by every task on one host.
- :mod:`.redis_schedule` - a Redis key, shared by every host (extra ``rpm_redis_conn_id``).
"""
