"""A production-shaped Airflow on this machine: CeleryExecutor workers, PostgreSQL and Redis.

    bash scripts/stack.sh up [--dags DIR] [--connection ID=URI] [--connections-file FILE]
    bash scripts/stack.sh status [--json] | trigger DAG_ID [CONF_JSON] | down [--purge]

(``scripts/stack.sh`` installs what ``up`` needs, then runs ``python -m stack`` with ``scripts/`` on
the path.) ``up`` starts, each bound to 127.0.0.1 on its own port and each stopped by its PID on
``down``:

- PostgreSQL (Debian's, run as the ``postgres`` user when we are root): a private cluster in the
  state folder, the metadata database ``airflow``;
- Redis (Debian's ``redis-server``, password in a 0600 file, nothing persisted): the Celery broker
  (database 0) and the pacing schedule of ``rpm_redis_conn_id`` (database 1);
- the MAI emulator with scaled latency (2-6 s for the service's ~40 s);
- Airflow: ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery
  worker`` processes, each worker with its own host name in task instances and its own temp folder
  (like two hosts); no log server anywhere (the api-server reads task logs from the shared folder).

Everything Airflow needs comes through environment variables (no airflow.cfg edits): one JWT
secret, fernet key and execution API URL for all. The state folder (``.stack/`` in the repository,
git-ignored, or ``$MAI_STACK_DIR``) holds ports, secrets (mode 0600), PIDs, logs, the database and
the images (``out/``). ``up`` on a running stack starts only what is missing.

Settings (environment): ``MAI_STACK_DIR``; ports ``MAI_STACK_API_PORT``, ``MAI_STACK_POSTGRES_PORT``,
``MAI_STACK_REDIS_PORT``, ``MAI_STACK_EMULATOR_PORT`` (default: free ones, kept across restarts);
``MAI_STACK_POOL_SLOTS`` (6), ``MAI_STACK_WORKER_CONCURRENCY`` (4), ``MAI_STACK_EMULATOR_LATENCY``
(``2-6``), ``MAI_STACK_EMULATOR_RPM`` (60; ``mai_default`` is paced to it), ``MAI_STACK_DAGS_FOLDER``
(as ``up --dags``), ``MAI_STACK_READY_WITHIN`` (seconds, 180).

One job per module: ``config`` (paths, names, settings, the error), ``processes`` (/proc: PIDs,
trees, memory, listening addresses; ports; waits), ``state`` (the state folder, starting a
component), ``services`` (PostgreSQL, Redis, the emulator), ``airflow`` (environment, commands,
migration, health, connections and pool), ``user`` (the user's DAG folder and connections, checked),
``rest`` (the REST API client), ``cli`` (the commands).
"""
