# One image for the API, the worker, the Discord bot and the migrations; docker-compose.yml
# picks the command. Build from the repository root: docker build -t hitl-approval-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: the runtime half of the lock (requirements/runtime.txt,
# the same pins as requirements/lock.txt), each file checked against its hash and nothing
# resolved here. A source change then rebuilds in seconds instead of reinstalling everything.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes --no-deps -r requirements/runtime.txt

# The project itself, editable, built with the locked setuptools: the code runs from /app, which
# also holds what a wheel would leave out (migrations/versions, the top-level discord_bot module).
# It brings the `hitl` command (docker-compose.yml's migrations run `hitl migrate`).
COPY . .
# /var/lib/hitl, the worker's data folder (audit-checkpoints.jsonl), belongs to that user: compose
# mounts a named volume there, which takes the folder's owner when first created.
RUN pip install --no-deps --no-build-isolation -e . \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent hitl \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/hitl

# Root owns the code; the processes run as an unprivileged user that cannot change it.
USER 10001:10001

EXPOSE 8000 9464

CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--ws-max-size", "65536"]
