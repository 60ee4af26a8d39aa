"""rlpipe: curricula of stable-baselines3 sessions on MuJoCo, locally and on SageMaker.

The core (config, plan, state, report data) imports nothing heavy so that the AWS Lambdas can use it;
training code lives in :mod:`rlpipe.trainer` and pulls in torch and MuJoCo only there.
"""

__version__ = "0.1.0"
