"""Image embedding + ImageNet labels: model, decoding and response code, free of TorchServe."""

# Bumped whenever decoding, preprocessing or the response changes what a vector means,
# so clients never mix embeddings across handler versions.
HANDLER_VERSION = "1.0.0"
