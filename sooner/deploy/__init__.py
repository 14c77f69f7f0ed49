"""Deploying pushed commits: validate the tree, store its objects, update the working copy, reconcile jobs.

* :mod:`sooner.deploy.push` -- the deploy itself and the pre-receive check;
* :mod:`sooner.deploy.tree` -- reading and validating a commit's tree;
* :mod:`sooner.deploy.checkout` -- bringing the working copy to a tree;
* :mod:`sooner.deploy.working_copy` -- work done by hand in the working copy: kept, or deployed.
"""
