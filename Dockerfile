# Tripwire: one image for every role. Default: the all-in-one `tripwire run` on the embedded log.
# Scale-out roles (see deploy/docker-compose.yml): `tripwire collector`, `tripwire engine`,
# `tripwire dispatcher`, `tripwire sink`, configured through TRIPWIRE_* variables.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tripwire ./tripwire
COPY collector ./collector
COPY rules ./rules
COPY sinks ./sinks
COPY webhooks ./webhooks
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tripwire \
    && mkdir -p /var/lib/tripwire && chown tripwire /var/lib/tripwire
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tripwire
WORKDIR /home/tripwire
ENV TRIPWIRE_DATA_DIR=/var/lib/tripwire \
    TRIPWIRE_SERVER__HOST=0.0.0.0 \
    TRIPWIRE_SERVER__PORT=8080
VOLUME ["/var/lib/tripwire"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["tripwire"]
CMD ["run"]
