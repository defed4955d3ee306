"""The controller's Kubernetes side: an API client, list+watch caches (informers), the status
writer and leader election. `legation.controller.kubernetes.source.KubernetesSource` puts them together.

- `client`: credentials (kubeconfig or the pod's service account, through kr8s) and plain JSON
  requests and watch streams; the resource types Legation reads and writes.
- `informer`: one list+watch cache per resource type and namespace (resourceVersion, bookmarks,
  relist on 410 Gone, reconnect with capped backoff).
- `leader`: a `coordination.k8s.io/v1` Lease, so that one replica writes status.
- `status`: `status.conditions` written back through the status subresource, in the background.
"""
