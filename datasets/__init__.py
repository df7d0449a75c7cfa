"""Readers and preparers of the real dataset formats, synthetic generators, transforms and batches.

Note: this top-level package is named ``datasets``, like Hugging Face's library; the toolkit does not
depend on that library, and the two must not be installed in the same environment.
"""
