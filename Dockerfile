# docker build -t dimmy-webhooks . && docker run -p 5000:5000 --env-file .env \
#   -e DIMMY_ADMIN_TOKEN=... -v dimmy-data:/data dimmy-webhooks
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /data dimmy
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir '.[postgres]' && rm -rf /root/.cache
USER dimmy
WORKDIR /data
ENV DIMMY_HOST=0.0.0.0 \
    DIMMY_DATABASE_URL=sqlite:////data/dimmy-webhooks.sqlite3
EXPOSE 5000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/readyz').status != 200)"
CMD ["dimmy-webhooks", "serve"]
