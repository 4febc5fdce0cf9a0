"""vLLM-Istio-Canary: release a new LLM version safely.

OpenAI-compatible model servers, Istio canary / A-B routing executed locally or by the mesh,
statistically sound rollout analysis, and a human-feedback data loop.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
