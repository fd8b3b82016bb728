"""Backends: the local tier's registry (llama.cpp in-process, OpenAI-compatible endpoint) and the cloud tier."""

from router.backends.base import (
    GenerationParams,
    GenerationStream,
    LocalBackend,
    LocalFailure,
    available_local_backends,
    create_local_backend,
    register_local_backend,
)
from router.backends.cloud import CloudBackend
from router.backends.llama_cpp import LlamaCppBackend, packaged_model_path
from router.backends.openai_compatible import OpenAICompatibleBackend

__all__ = [
    "CloudBackend",
    "GenerationParams",
    "GenerationStream",
    "LlamaCppBackend",
    "LocalBackend",
    "LocalFailure",
    "OpenAICompatibleBackend",
    "available_local_backends",
    "create_local_backend",
    "packaged_model_path",
    "register_local_backend",
]
