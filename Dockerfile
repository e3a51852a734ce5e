# One image for the API, the worker, the Discord bot and the migrations; docker-compose.yml
# picks the command. Build from the repository root: docker build -t hitl-approval-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer, read from pyproject.toml: a source change then
# rebuilds in seconds instead of reinstalling everything.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, editable: the code runs from /app, which also holds what a wheel would
# leave out (migrations/versions, the top-level discord_bot module).
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent hitl

# Root owns the code; the processes run as an unprivileged user that cannot change it.
USER 10001:10001

EXPOSE 8000 9464

CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
