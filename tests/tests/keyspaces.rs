//! Named keyspaces: created once as hash- or range-ordered, isolated from each other, and
//! refused clearly when unknown.

use ringkv_client::{ClientError, KeyspaceMode, RawClient, RawConfig};
use ringkv_tests::cluster::ClusterBuilder;

#[test]
fn keyspaces_are_isolated_and_keep_their_order() {
    let c = ClusterBuilder::default().start();
    let pd = c.pd();
    c.rt.block_on(pd.create_keyspace("orders", KeyspaceMode::Range))
        .unwrap();
    c.rt.block_on(pd.create_keyspace("users", KeyspaceMode::Hash))
        .unwrap();
    let connect = |name: &str| {
        c.rt.block_on(RawClient::connect_keyspace(
            &[c.pd_addr()],
            name,
            RawConfig::default(),
        ))
    };
    let orders = connect("orders").unwrap();
    let users = connect("users").unwrap();
    let default = c.client();
    for (client, tag) in [(&orders, "o"), (&users, "u"), (&default, "d")] {
        let pairs: Vec<_> = (0..50)
            .map(|i| {
                (
                    format!("k{i:02}").into_bytes(),
                    format!("{tag}{i}").into_bytes(),
                )
            })
            .collect();
        c.rt.block_on(client.batch_put(pairs)).unwrap();
    }
    // The same user keys, three keyspaces, three values.
    for (client, tag) in [(&orders, "o"), (&users, "u"), (&default, "d")] {
        let all = c.rt.block_on(client.scan("", "", 1000)).unwrap();
        assert_eq!(all.len(), 50);
        assert!(all.iter().all(|(_, v)| v.starts_with(tag.as_bytes())));
        assert_eq!(all[7].0, b"k07".to_vec(), "scans are in user-key order");
    }
    c.rt.block_on(orders.delete_range("", "")).unwrap();
    assert!(c.rt.block_on(orders.scan("", "", 10)).unwrap().is_empty());
    assert_eq!(c.rt.block_on(users.scan("", "", 1000)).unwrap().len(), 50);

    match c
        .rt
        .block_on(pd.create_keyspace("orders", KeyspaceMode::Hash))
    {
        Err(e) => assert!(e.to_string().contains("exists already"), "{e}"),
        Ok(k) => panic!("created a keyspace twice: {k:?}"),
    }
    match connect("missing") {
        Err(e @ ClientError::Placement { .. }) => {
            assert!(e.to_string().contains("does not exist"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a keyspace that does not exist"),
    }
}
