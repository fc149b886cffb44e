"""Dataset rows: tenant-scoped lookups of `dataset://` uploads and their store keys."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from store import datasets
from store.ids import new_id
from store.tables import Tenant


def test_dataset_rows(
    sessions: sessionmaker[Session], tenant: Tenant, other_tenant: Tenant
) -> None:
    dataset_id = new_id("ds")
    key = f"uploads/{tenant.id}/datasets/{dataset_id}.npz"
    with sessions.begin() as session:
        datasets.add_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=tenant.id,
            name="tiny",
            format="npz",
            path=key,
            size=10,
            sha256="0" * 64,
            meta={"train_size": 2},
        )
    uri = datasets.dataset_uri(dataset_id)
    assert datasets.dataset_id_from_uri(uri) == dataset_id
    assert datasets.dataset_id_from_uri("npz:///x.npz") is None
    with sessions.begin() as session:
        found = datasets.get_dataset(session, tenant.id, dataset_id)
        assert found is not None and found.path == key
        assert datasets.get_dataset(session, other_tenant.id, dataset_id) is None
        assert [d.id for d in datasets.list_datasets(session, tenant.id)] == [dataset_id]
        assert datasets.list_datasets(session, other_tenant.id) == []
        assert datasets.delete_dataset(session, other_tenant.id, dataset_id) is None
        row = datasets.delete_dataset(session, tenant.id, dataset_id)
        assert row is not None and row.meta == {"train_size": 2}
        assert datasets.get_dataset(session, tenant.id, dataset_id) is None
