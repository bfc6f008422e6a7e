"""Kernels: plain arrays in, plain arrays out, vectorised across integrations.

Kernels never import :class:`~exomiri.LRSObservation`; the observation's verbs
check prerequisites, call a kernel and record what was done.
"""
