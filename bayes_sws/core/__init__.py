"""The model's pieces: the penalty's closed forms, the mixture kernel, distributions,
priors, likelihoods and the Pyro model (PRML §5.5.7, eqs 5.136-5.147)."""
