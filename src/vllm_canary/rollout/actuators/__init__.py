"""Actuators by name: how `rollout --target` moves traffic."""

from __future__ import annotations

from vllm_canary.rollout.actuators.base import Actuator, ActuatorError
from vllm_canary.rollout.actuators.gateway import GatewayActuator
from vllm_canary.rollout.actuators.kubernetes import KubernetesActuator

ACTUATORS: dict[str, type] = {"gateway": GatewayActuator, "kubernetes": KubernetesActuator}

__all__ = ["ACTUATORS", "Actuator", "ActuatorError", "GatewayActuator", "KubernetesActuator"]
