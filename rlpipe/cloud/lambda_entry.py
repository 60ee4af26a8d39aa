"""The one wrapper every Lambda handler uses: Powertools logging around a step of :mod:`rlpipe.cloud.steps`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

Step = Callable[[dict[str, Any], Any], dict[str, Any]]


def powertools_handler(step: Step) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A Lambda handler running ``step(event, Context.from_env())`` with Powertools' structured logger.

    The core's ``rlpipe`` loggers are routed through the same formatter, so every line is JSON with the
    request id. Powertools comes from the Lambda layer, hence the import here and not at module level.
    """
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    from rlpipe.cloud.steps import Context

    logger = Logger()
    logging.getLogger("rlpipe")  # registered so that copy_config finds it
    copy_config_to_registered_loggers(source_logger=logger, include={"rlpipe"})

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return step(event, Context.from_env())

    handler.__doc__ = step.__doc__
    return handler
