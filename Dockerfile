# falcon-oauth: uvicorn by default; for WSGI workers run
#   docker run IMAGE gunicorn -c config/gunicorn.conf.py wsgi:app
FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
RUN pip install --no-cache-dir --prefix=/install -r requirements.txt

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin falcon
WORKDIR /app
COPY --from=build /install /usr/local
COPY asgi.py wsgi.py ./
COPY config/ config/
COPY falcon_oauth/ falcon_oauth/
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["python", "-m", "falcon_oauth.healthcheck"]
CMD ["python", "-m", "falcon_oauth"]
