# The renal DICOM node as a container: `docker build -t dicomnode . && docker run -p 11112:11112 -v $PWD/var:/app/var dicomnode`
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY dicomnode dicomnode
COPY training training
COPY models models
RUN pip install --no-cache-dir . \
 && sed 's/^host: 127.0.0.1 .*/host: 0.0.0.0/' config.yaml > config.container.yaml
ENV nnUNet_def_n_proc=2 PYTHONUNBUFFERED=1
EXPOSE 11112
VOLUME ["/app/var"]
HEALTHCHECK --interval=30s --timeout=10s CMD echoscu -aec RENALNODE 127.0.0.1 11112 || exit 1
CMD ["dicomnode", "--config", "config.container.yaml", "serve"]
