"""Client wrapping: the only layer that knows the OpenAI SDK.

``wrapper`` (with_fast_memory, with_memory, the wrapped client objects), ``core`` (what every
copy of one wrapper shares), ``stream`` (the SDK's streams with the block cleaned out),
``writer`` (the background writer of inline memories), ``facade`` (the ``.memory`` API bound
to one user), ``background`` (with_memory's durable extraction queue and worker).
"""
