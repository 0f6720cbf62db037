# The agents image: the library and the example configuration, nothing else.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY amqp_agents ./amqp_agents
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --no-create-home agents
USER agents

# SIGTERM (docker stop) drains in-flight handlers, then exits 0.
STOPSIGNAL SIGTERM
CMD ["amqp-agents", "run", "config/agents.example.yaml"]
