"""Development tooling: the emulated AWS organisation, the sandbox, the demo, the fault gateway and the
cluster harness. Never part of a deployment: nothing under include/ imports it (an import-linter contract).
"""
