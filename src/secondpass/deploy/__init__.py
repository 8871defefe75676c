"""Running SecondPass on the engines teams already operate (Ray Serve; Kubernetes via Helm).

The Helm chart lives in ``deploy/helm/secondpass`` at the repository root; this
package holds what needs Python: :mod:`secondpass.deploy.ray`.
"""
