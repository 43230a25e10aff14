//! A fault-injecting wrapper around any bucket: rules fail, delay or cut operations chosen
//! by kind and key, a given number of times. A cut read returns fewer bytes than asked (a
//! body that ended early); a cut write reaches the store but reports a failure (an answer
//! lost on the way back), the hardest case for a client to get right.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::{
    Bucket, CopyOptions, Features, ListOptions, ObjectInfo, Op, Page, PartFuture, Payload,
    PutOptions, PutResult, Result, SharedBucket, StoreError, StoreErrorKind, Upload,
};

/// What a rule does to a matching operation.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fail with this kind, without reaching the store.
    Fail(StoreErrorKind),
    /// Wait this long, then go on.
    Delay(Duration),
    /// Reads: return a short body. Writes: do it, then report a failure.
    Cut,
}

/// Which operations a rule matches and what it does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The operation, or any.
    pub op: Option<Op>,
    /// A fragment the key must contain ("" for any).
    pub key: String,
    /// What to do.
    pub action: Action,
    /// How many times (forever when `None`).
    pub times: Option<usize>,
}

impl Rule {
    /// Fail `op` on keys containing `key`, `times` times (or always).
    pub fn fail(op: Op, key: &str, kind: StoreErrorKind, times: Option<usize>) -> Rule {
        Rule {
            op: Some(op),
            key: key.into(),
            action: Action::Fail(kind),
            times,
        }
    }
}

/// The wrapper.
#[derive(Debug, Clone)]
pub struct Faulty {
    inner: SharedBucket,
    rules: Arc<Mutex<Vec<Rule>>>,
}

fn injected(op: Op, key: &str, kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind, format!("{key:?}: injected failure of {op:?}"))
}

fn cut(op: Op, key: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("{key:?}: the connection was cut after {op:?} was sent"),
    )
}

impl Faulty {
    /// Wrap `inner`, with no rules yet.
    pub fn new(inner: SharedBucket) -> Faulty {
        Faulty {
            inner,
            rules: Arc::default(),
        }
    }

    /// Add a rule; rules are checked in the order they were added.
    pub fn add(&self, rule: Rule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The action for `op` on `key`, consuming one use of its rule.
    fn action(&self, op: Op, key: &str) -> Option<Action> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let i = rules
            .iter()
            .position(|r| r.op.is_none_or(|o| o == op) && key.contains(r.key.as_str()))?;
        let action = rules[i].action.clone();
        if let Some(t) = &mut rules[i].times {
            *t -= 1;
            if *t == 0 {
                rules.remove(i);
            }
        }
        Some(action)
    }

    /// Apply the rules before `op`; `Ok(true)` when the operation must be cut.
    async fn before(&self, op: Op, key: &str) -> Result<bool> {
        match self.action(op, key) {
            None => Ok(false),
            Some(Action::Fail(kind)) => Err(injected(op, key, kind)),
            Some(Action::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
            Some(Action::Cut) => Ok(true),
        }
    }

    /// Run a write under the rules: a cut one happens and then reports a failure.
    async fn write<T>(&self, op: Op, key: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let cut_it = self.before(op, key).await?;
        let r = f.await?;
        if cut_it { Err(cut(op, key)) } else { Ok(r) }
    }
}

#[async_trait::async_trait]
impl Bucket for Faulty {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        if self.before(Op::Head, key).await? {
            return Err(cut(Op::Head, key));
        }
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        if self.before(Op::List, prefix).await? {
            return Err(cut(Op::List, prefix));
        }
        self.inner.list(prefix, opts).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        Ok(self.get_parts(key, range, if_match).await?.to_bytes())
    }

    async fn get_parts(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Payload> {
        let cut_it = self.before(Op::Get, key).await?;
        let data = self.inner.get_parts(key, range, if_match).await?;
        Ok(if cut_it {
            data.slice(0..data.len() / 2)
        } else {
            data
        })
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        self.write(Op::Put, key, self.inner.put(key, data, opts))
            .await
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        let inner = self
            .write(Op::StartUpload, key, self.inner.start_upload(key, opts))
            .await?;
        Ok(Box::new(FaultyUpload {
            faults: self.clone(),
            key: key.to_string(),
            inner,
        }))
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        self.write(Op::Copy, to, self.inner.copy(from, to, opts))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.write(Op::Delete, key, self.inner.delete(key)).await
    }

    async fn put_marker(&self, dir: &str) -> Result<()> {
        self.write(Op::Put, dir, self.inner.put_marker(dir)).await
    }

    async fn create_bucket(&self) -> Result<()> {
        self.write(Op::Bucket, "", self.inner.create_bucket()).await
    }

    async fn delete_bucket(&self) -> Result<()> {
        self.write(Op::Bucket, "", self.inner.delete_bucket()).await
    }
}

struct FaultyUpload {
    faults: Faulty,
    key: String,
    inner: Box<dyn Upload>,
}

impl FaultyUpload {
    fn part(&mut self, op: Op, fut: PartFuture) -> PartFuture {
        let action = self.faults.action(op, &self.key);
        let key = self.key.clone();
        Box::pin(async move {
            match action {
                Some(Action::Fail(kind)) => Err(injected(op, &key, kind)),
                Some(Action::Delay(d)) => {
                    tokio::time::sleep(d).await;
                    fut.await
                }
                Some(Action::Cut) => {
                    fut.await?;
                    Err(cut(op, &key))
                }
                None => fut.await,
            }
        })
    }
}

#[async_trait::async_trait]
impl Upload for FaultyUpload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        let fut = self.inner.put_part(data);
        self.part(Op::PutPart, fut)
    }

    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture {
        let fut = self.inner.copy_part(from, range, if_match);
        self.part(Op::CopyPart, fut)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let key = self.key.clone();
        let cut_it = self.faults.before(Op::Complete, &key).await?;
        let r = self.inner.complete().await?;
        if cut_it {
            Err(cut(Op::Complete, &key))
        } else {
            Ok(r)
        }
    }

    async fn abort(&mut self) -> Result<()> {
        let key = self.key.clone();
        self.faults.before(Op::Abort, &key).await?;
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryBucket;

    #[tokio::test]
    async fn rules_fail_cut_and_expire() {
        let mem = Arc::new(MemoryBucket::new());
        let f = Faulty::new(mem.clone());
        f.add(Rule::fail(
            Op::Put,
            "a",
            StoreErrorKind::Unavailable,
            Some(1),
        ));
        let e = f
            .put("a", Payload::from(b"1".as_slice()), &PutOptions::default())
            .await;
        assert_eq!(e.unwrap_err().kind, StoreErrorKind::Unavailable);
        assert!(mem.object("a").is_none(), "a failed write reaches nothing");
        f.put("a", Payload::from(b"12".as_slice()), &PutOptions::default())
            .await
            .unwrap();
        f.add(Rule {
            op: Some(Op::Delete),
            key: "a".into(),
            action: Action::Cut,
            times: None,
        });
        assert!(f.delete("a").await.is_err());
        assert!(mem.object("a").is_none(), "a cut write happened");
        f.clear();
        f.put(
            "b",
            Payload::from(b"1234".as_slice()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
        f.add(Rule {
            op: Some(Op::Get),
            key: "b".into(),
            action: Action::Cut,
            times: Some(1),
        });
        assert_eq!(f.get_range("b", 0..4, None).await.unwrap().len(), 2);
        assert_eq!(f.get_range("b", 0..4, None).await.unwrap().len(), 4);
    }
}
