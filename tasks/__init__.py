"""Prefect tasks: thin adapters around plain, typed functions that do the pipeline's work.

Data preparation, models, rollout, teacher scoring, training, evaluation, RL, the rollout store
and tracking live here, each as plain functions first; flows/ composes them.
"""
