//! Migration mappings checked against real catalogs: a source database and
//! a migrated target (renamed column, split column, widened type, added
//! NOT NULL column with a default, dropped column, renamed table).

use anyhow::{ensure, Result};
use switchyard_replay::catalog::{Catalog, QualifiedName};
use switchyard_replay::mapping::{ColumnSource, Mapping};
use switchyard_tests::Cluster;

const SOURCE: &str = "
    CREATE TABLE person (id int PRIMARY KEY, name text NOT NULL, legacy int);
    CREATE TABLE account (id int PRIMARY KEY, owner int REFERENCES person (id), balance int NOT NULL);
    CREATE TABLE tag (a int, b text, PRIMARY KEY (a, b));
";

const TARGET: &str = "
    CREATE TABLE person (id int PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL,
                         created timestamptz NOT NULL DEFAULT now());
    CREATE TABLE accounts (id int PRIMARY KEY, owner_id int, balance bigint NOT NULL);
    CREATE TABLE tag (a int, b text, PRIMARY KEY (a, b));
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_resolves_against_both_catalogs() -> Result<()> {
    let cluster = Cluster::builder().database("target").start().await?;
    let src = cluster.connect("postgres").await?;
    let dst = cluster.connect("target").await?;
    src.batch_execute(SOURCE).await?;
    dst.batch_execute(TARGET).await?;
    let (src_cat, dst_cat) = (Catalog::load(&src).await?, Catalog::load(&dst).await?);

    // The default mapping fails, naming every table and column at fault.
    let errors = Mapping::default().resolve(&src_cat, &dst_cat).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let all = text.join("\n");
    ensure!(
        all.contains("mapping of public.account: target table public.account does not exist"),
        "{all}"
    );
    ensure!(
        all.contains("column first_name") && all.contains("NOT NULL without a default"),
        "{all}"
    );
    ensure!(all.contains("column legacy") && all.contains("`drop`"), "{all}");

    let mapping = Mapping::parse(
        r#"
        [tables.person]
        drop = ["legacy"]
        [tables.person.columns]
        first_name = "split_part(name, ' ', 1)"
        last_name = "split_part(name, ' ', 2)"
        [tables.person.reverse]
        name = "first_name || ' ' || last_name"

        [tables.account]
        target = "accounts"
        [tables.account.columns]
        owner_id = "owner"
        "#,
        "mapping.toml",
    )?;
    let resolved = mapping
        .resolve(&src_cat, &dst_cat)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let account = resolved.table(&QualifiedName::new("public", "account")).unwrap();
    ensure!(account.target == QualifiedName::new("public", "accounts"));
    ensure!(account
        .columns
        .contains(&("owner_id".into(), ColumnSource::Column("owner".into()))));
    ensure!(account
        .columns
        .contains(&("balance".into(), ColumnSource::Column("balance".into()))));
    let person = resolved.table(&QualifiedName::new("public", "person")).unwrap();
    ensure!(
        !person.columns.iter().any(|(c, _)| c == "created"),
        "created takes its default"
    );
    ensure!(resolved.reverse_errors().is_empty(), "{:?}", resolved.reverse_errors());
    let tag = resolved.table(&QualifiedName::new("public", "tag")).unwrap();
    ensure!(tag.target_key == vec!["a".to_string(), "b".to_string()]);
    // Its expressions run on the source.
    ensure!(resolved.has_expressions());
    resolved
        .check_on_source(&src, &src_cat)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;

    // A copy from a source column that does not exist is named from the
    // catalogs; a misspelt column inside an expression, by the source.
    let misspelt = |first_name: &str, owner_id: &str| {
        Mapping::parse(
            &format!(
                r#"
                [tables.person]
                drop = ["legacy"]
                [tables.person.columns]
                first_name = "{first_name}"
                last_name = "split_part(name, ' ', 2)"
                [tables.account]
                target = "accounts"
                [tables.account.columns]
                owner_id = "{owner_id}"
                "#
            ),
            "mapping.toml",
        )
    };
    let errors = misspelt("split_part(name, ' ', 1)", "ownr")?
        .resolve(&src_cat, &dst_cat)
        .unwrap_err();
    let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    ensure!(
        all.contains("mapping of public.account, column owner_id: mapped from source column ownr, which public.account does not have"),
        "{all}"
    );
    let resolved = misspelt("split_part(nme, ' ', 1)", "owner")?
        .resolve(&src_cat, &dst_cat)
        .map_err(|e| anyhow::anyhow!("the catalogs cannot see into an expression: {e:?}"))?;
    let errors = resolved.check_on_source(&src, &src_cat).await?.unwrap_err();
    let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    ensure!(errors.len() == 1, "{all}");
    ensure!(
        all.contains("mapping of public.person:")
            && all.contains("expressions under `columns` do not run on the source")
            && all.contains("\"nme\" does not exist (SQLSTATE 42703)"),
        "{all}"
    );
    Ok(())
}
