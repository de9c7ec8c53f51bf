# The gateway's local server (uvicorn, the same handlers as the Functions app) in a container,
# for Azure Container Apps, AKS or a VM. It checks no caller credential: put it behind something
# that does (docs/deploy.md, "In a container").
#
#   docker build -t azureml-chat-gateway .
#   docker run --rm -p 127.0.0.1:7071:7071 -e GATEWAY_CONFIG="$(cat gateway.json)" azureml-chat-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY shared/ shared/
USER 10001

EXPOSE 7071
# shared.asgi.server_command with --host 0.0.0.0: reachable through the container's port.
CMD ["python", "-m", "uvicorn", "--factory", "shared.asgi:create_app", "--host", "0.0.0.0", "--port", "7071", "--no-proxy-headers", "--no-server-header", "--http", "shared.uvicorn_protocol:BoundedHttpToolsProtocol", "--ws", "none", "--lifespan", "on"]
