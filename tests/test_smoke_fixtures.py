from shredvault.vault import Vault


def test_make_vault_round_trips_a_record_on_each_backend(make_vault) -> None:
    v: Vault = make_vault()
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    s = v.admin()
    c = s.add_customer()
    rid = s.put(c, "profile", {"name": "Li Wei"}, purpose="service")
    assert s.get(c, rid, purpose="service").fields == {"name": "Li Wei"}
