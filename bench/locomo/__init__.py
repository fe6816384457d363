"""The LoCoMo retrieval suite: loader, metrics, retrievers and the runner.

LoCoMo (Maharana et al., ACL 2024, CC BY-NC 4.0) is read from the shared data folder and never
copied into the repository.
"""
