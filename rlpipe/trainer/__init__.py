"""The trainer: runs one session under SageMaker's container contract, locally or in the training image."""
