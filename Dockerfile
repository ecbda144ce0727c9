# notifyd worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY notifyd ./notifyd
RUN pip install --no-cache-dir .
ENV NOTIFYD_WEB_HOST=0.0.0.0 NOTIFYD_LOG_FORMAT=json
EXPOSE 6066
ENTRYPOINT ["notifyd"]
CMD ["worker"]
