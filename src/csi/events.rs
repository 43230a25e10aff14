//! The node plugin's writes to the Kubernetes API: Events on pods for what happens to their
//! volumes (a mount process that died, was replaced or given up, an error it logged, a
//! volume condition turning abnormal), and the node's startup taint, removed once the
//! plugin is registered with kubelet. Without API access (a plugin run by hand) both are
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::mounter::{EventSink, MountEvent};

/// The API server, through the node plugin's ServiceAccount, connected on first use.
pub struct Cluster {
    client: tokio::sync::OnceCell<Option<kube::Client>>,
    node: String,
    driver: String,
    rt: tokio::runtime::Handle,
}

impl Cluster {
    /// For the plugin of `driver` on `node`; tasks run on the current runtime.
    pub fn new(node: &str, driver: &str) -> Arc<Cluster> {
        Arc::new(Cluster {
            client: tokio::sync::OnceCell::new(),
            node: node.to_string(),
            driver: driver.to_string(),
            rt: tokio::runtime::Handle::current(),
        })
    }

    async fn client(&self) -> Option<kube::Client> {
        self.client
            .get_or_init(|| async {
                match kube::Client::try_default().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::info!(error = %e, "no Kubernetes API access: no Events, no taint removal");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// Where mount events go: posted as Events, in the background.
    pub fn sink(self: &Arc<Self>) -> EventSink {
        let me = self.clone();
        Arc::new(move |e: MountEvent| {
            let me2 = me.clone();
            me.rt.spawn(async move { me2.post(e).await });
        })
    }

    /// Post `e` as an Event on its pod.
    pub async fn post(&self, e: MountEvent) {
        let Some(client) = self.client().await else {
            return;
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", e.pod.name)),
                namespace: Some(e.pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(e.pod.name.clone()),
                namespace: Some(e.pod.namespace.clone()),
                uid: Some(e.pod.uid.clone()),
                ..Default::default()
            },
            reason: Some(e.reason.to_string()),
            message: Some(format!("volume {}: {}", e.volume_id, e.message)),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(self.driver.clone()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(self.driver.clone()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(client, &e.pod.namespace);
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                tracing::info!(volume_id = %e.volume_id, namespace = %e.pod.namespace, pod = %e.pod.name, reason = e.reason, "event posted")
            }
            Err(err) => {
                tracing::warn!(volume_id = %e.volume_id, reason = e.reason, error = %err, "posting an event failed")
            }
        }
    }

    /// The taint that keeps pods off the node until the plugin serves.
    pub fn startup_taint(&self) -> String {
        format!("{}/agent-not-ready", self.driver)
    }

    /// Once kubelet lists the driver on this node (it registered), remove the startup
    /// taint from the node, in the background.
    pub fn remove_startup_taint_when_registered(self: &Arc<Self>) {
        let me = self.clone();
        self.rt.spawn(async move {
            let Some(client) = me.client().await else {
                return;
            };
            let csinodes: Api<CSINode> = Api::all(client.clone());
            for _ in 0..600 {
                let registered = csinodes.get_opt(&me.node).await.ok().flatten().is_some_and(|n| {
                    n.spec.drivers.iter().any(|d| d.name == me.driver)
                });
                if registered {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let nodes: Api<Node> = Api::all(client);
            let key = me.startup_taint();
            for attempt in 0..10 {
                match me.untaint(&nodes, &key).await {
                    Ok(true) => {
                        tracing::info!(node = %me.node, taint = %key, "registered with kubelet: startup taint removed");
                        return;
                    }
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(node = %me.node, taint = %key, attempt, error = %e, "removing the startup taint failed");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }

    /// Remove `key` from the node's taints; whether it was there.
    async fn untaint(&self, nodes: &Api<Node>, key: &str) -> Result<bool, kube::Error> {
        let mut node = nodes.get(&self.node).await?;
        let Some(spec) = node.spec.as_mut() else {
            return Ok(false);
        };
        let Some(taints) = spec.taints.as_mut() else {
            return Ok(false);
        };
        let before = taints.len();
        taints.retain(|t| t.key != key);
        if taints.len() == before {
            return Ok(false);
        }
        // A merge patch of the taints alone (RBAC: nodes patch, not update); the
        // resourceVersion makes it a compare-and-swap: a concurrent change retries.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "taints": taints },
        });
        nodes
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(true)
    }
}
