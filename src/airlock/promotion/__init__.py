"""A candidate's life from evaluation to an approved promotion: evaluate, sign, policy, approvals, records."""
