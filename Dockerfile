# The cmdb-ec2-inventory runtime image: the official Airflow image plus this project's pinned
# dependencies, built the way "Extending the image" in the Airflow docker-stack docs describes
# (https://airflow.apache.org/docs/docker-stack/build.html#extending-the-image).
#
# The base tag must match the `apache-airflow==` pin in requirements.txt, and its Python must match the
# `--python-version` that constraints.txt was compiled for: tests/deploy/test_docker_compose.py checks both.
#
#   docker compose build                # tags cmdb-ec2-inventory:3.3.2 (see docker-compose.yaml)
#   docker build -t cmdb-ec2-inventory:3.3.2 .
FROM apache/airflow:3.3.2-python3.11

# The official image runs as the `airflow` user (UID 50000, GID 0) and expects packages to be installed
# as that user, never as root.
USER airflow

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/build/

# Re-stating "apache-airflow==${AIRFLOW_VERSION}" (AIRFLOW_VERSION is set by the base image) makes pip
# fail instead of silently up- or downgrading Airflow if requirements.txt and the FROM line ever drift.
# constraints.txt is the project's full lock (`uv pip compile`), so the image runs exactly the versions
# the tests ran with. `pip check` then fails the build if the lock moved a package that one of the
# providers preinstalled in the official image (celery, postgres, redis, fab, ...) cannot work with.
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/airflow/build/requirements.txt \
        -c /opt/airflow/build/constraints.txt \
    && pip check

# The code is NOT copied: docker-compose.yaml mounts dags/, plugins/ and include/ into /opt/airflow, so
# a code change needs no rebuild, and the image only changes when a dependency does (its tag follows
# the Airflow version). For an immutable image (a registry-pushed release, or the Kubernetes executor,
# where nothing is mounted), uncomment these lines and drop the three code mounts from the compose file
# (never devtools/, tests/ or bench/: dev tooling stays out of every image):
#
# COPY --chown=airflow:0 dags/ /opt/airflow/dags/
# COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
# COPY --chown=airflow:0 include/ /opt/airflow/include/
# ENV PYTHONPATH=/opt/airflow
