"""The live console: the vLLM-SRE dashboard (the chart's Grafana JSON, evaluated through
Prometheus), a Kiali-style topology, the rollout's evidence, the data loop's verdicts and the
routes in force, served by `vllm-canary up` and `vllm-canary console`."""
