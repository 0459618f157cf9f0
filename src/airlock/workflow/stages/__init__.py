"""The stage types a workflow can name: thin adapters from a stage's context to the capability
services (train, evaluate, gate, serve). The services know nothing of workflows."""
