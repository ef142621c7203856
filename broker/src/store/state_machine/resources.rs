//! The metadata group's resource objects as entries apply: an apply (`PutResource`, `ApplyResource`, the
//! conditional `ApplyResourceIfToken`) or one annotation (`SetAnnotation`, `SetAdminAnnotation`) in, the merged
//! object staged in the apply's batch out.
//! Which merge rules an entry gets is decided by its variant: the rules are part of the log format, so a
//! node replaying an old log stores what the nodes that applied it first stored.

use std::io;

use sluice_controller::meta::{
    ApplyOutcome, merge_for_apply, merge_for_apply_keeping_owned, set_admin_annotation, with_annotation,
};

use super::{GroupStateMachine, Staged};
use crate::command::{ResourceKey, ResourceRecord};
use crate::store::keys::{CF_SM_STATE, resource_key};
use crate::store::{cf, io_err};

/// The merge rules of an entry's variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResourceRules {
    /// `PutResource`, `SetAnnotation`: the incoming object replaces the user's part whole.
    Original,
    /// `ApplyResource`, `SetAdminAnnotation`: annotations the admin API set survive an apply that does not
    /// name them ([`sluice_controller::meta::merge_for_apply_keeping_owned`]).
    KeepingOwned,
}

/// One annotation to set (or, with `None`, remove) on the object of `key`, if it is still the one of `uid`.
pub(super) struct AnnotationChange<'a> {
    pub(super) key: &'a ResourceKey,
    pub(super) uid: &'a str,
    pub(super) annotation: &'a str,
    pub(super) value: Option<&'a str>,
}

impl GroupStateMachine {
    /// A resource as of the writes staged so far in this apply.
    pub(super) fn staged_resource(&self, staged: &Staged, key: &ResourceKey) -> Option<String> {
        match staged.resources.get(key) {
            Some(staged) => staged.clone(),
            None => self.view.resources.read().ok().and_then(|r| r.get(key).cloned()),
        }
    }

    /// Stores a resource with the metadata Sluice maintains (uid, generation, resourceVersion = the entry's
    /// log index, creationTimestamp).
    pub(super) fn stage_put_resource(
        &self,
        staged: &mut Staged,
        record: &ResourceRecord,
        log_index: u64,
        rules: ResourceRules,
    ) -> io::Result<ApplyOutcome> {
        let existing: Option<serde_json::Value> =
            self.staged_resource(staged, &record.key).map(|j| serde_json::from_str(&j)).transpose().map_err(io_err)?;
        let incoming: serde_json::Value = serde_json::from_str(&record.json).map_err(io_err)?;
        let merge = match rules {
            ResourceRules::Original => merge_for_apply,
            ResourceRules::KeepingOwned => merge_for_apply_keeping_owned,
        };
        let (merged, outcome) = merge(existing.as_ref(), incoming, &record.uid, &record.applied_at, log_index);
        if outcome != ApplyOutcome::Unchanged {
            self.stage_resource(staged, &record.key, Some(&merged.to_string()))?;
        }
        Ok(outcome)
    }

    /// [`Self::stage_put_resource`] (keeping owned annotations) only when the stored object's `spec.token` is
    /// `token` (`None`: only when there is no object): `created`, `configured`, `unchanged`, or `conflict`
    /// (nothing staged).
    pub(super) fn stage_put_resource_if_token(
        &self,
        staged: &mut Staged,
        record: &ResourceRecord,
        token: Option<&str>,
        log_index: u64,
    ) -> io::Result<&'static str> {
        let existing: Option<serde_json::Value> =
            self.staged_resource(staged, &record.key).map(|j| serde_json::from_str(&j)).transpose().map_err(io_err)?;
        let stored_token = existing.as_ref().map(|object| object.pointer("/spec/token").and_then(|t| t.as_str()));
        let holds = match (stored_token, token) {
            (None, None) => true,
            (Some(stored), Some(token)) => stored == Some(token),
            _ => false,
        };
        if !holds {
            return Ok("conflict");
        }
        Ok(self.stage_put_resource(staged, record, log_index, ResourceRules::KeepingOwned)?.as_str())
    }

    /// `ApplyResourceIfVersion`: the apply, only when the object as it is now (staged included) has
    /// `resourceVersion` `expected_version` (`None`: only when there is none); else `conflict`.
    pub(super) fn stage_put_resource_if_version(
        &self,
        staged: &mut Staged,
        record: &ResourceRecord,
        expected_version: Option<u64>,
        log_index: u64,
    ) -> io::Result<&'static str> {
        let existing: Option<serde_json::Value> =
            self.staged_resource(staged, &record.key).map(|j| serde_json::from_str(&j)).transpose().map_err(io_err)?;
        if existing.as_ref().map(crate::resources::resource_version) != expected_version {
            return Ok("conflict");
        }
        Ok(self.stage_put_resource(staged, record, log_index, ResourceRules::KeepingOwned)?.as_str())
    }

    /// One annotation set or removed on the object as it is now (staged included): `configured`, `unchanged`,
    /// or `absent` (none, or another object than the one of `uid`, when set). The object's uid, generation
    /// and status stay; its resourceVersion becomes this entry's.
    pub(super) fn stage_set_annotation(
        &self,
        staged: &mut Staged,
        change: AnnotationChange<'_>,
        log_index: u64,
        rules: ResourceRules,
    ) -> io::Result<&'static str> {
        let AnnotationChange { key, uid, annotation, value } = change;
        let Some(existing) = self.staged_resource(staged, key) else { return Ok("absent") };
        let existing: serde_json::Value = serde_json::from_str(&existing).map_err(io_err)?;
        if !uid.is_empty() && existing.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(uid) {
            return Ok("absent");
        }
        let (merged, outcome) = match rules {
            ResourceRules::Original => {
                merge_for_apply(Some(&existing), with_annotation(&existing, annotation, value), "", "", log_index)
            }
            ResourceRules::KeepingOwned => set_admin_annotation(&existing, annotation, value, log_index),
        };
        if outcome != ApplyOutcome::Unchanged {
            self.stage_resource(staged, key, Some(&merged.to_string()))?;
        }
        Ok(outcome.as_str())
    }

    pub(super) fn stage_resource(
        &self,
        staged: &mut Staged,
        key: &ResourceKey,
        json: Option<&String>,
    ) -> io::Result<()> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        let db_key = resource_key(self.group, &key.kind, &key.namespace, &key.name);
        match json {
            Some(json) => staged.batch.put_cf(sm, db_key, json.as_bytes()),
            None => staged.batch.delete_cf(sm, db_key),
        }
        staged.resources.insert(key.clone(), json.cloned());
        Ok(())
    }
}
