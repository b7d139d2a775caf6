//! The expansion of the README's `dashboard`, kept under a golden file
//! (`tests/expand/dashboard.expanded.rs`) so that a change to what
//! `#[computed]` generates is seen in review. After an intended change,
//! bless it with `SMACHE_BLESS=1 cargo test -p smache-macros golden`.

use quote::quote;

use crate::expand;

#[test]
fn the_readme_dashboard_expands_as_recorded() {
    let args = quote!(User, relations(Order => |o: &Order| o.user_id), ttl = "1h");
    let item = quote! {
        /// Keyed by the user's id; refreshed when the user changes and when
        /// one of their orders does.
        async fn dashboard(user: &User) -> String {
            format!("Welcome back, {}", user.name)
        }
    };
    let expanded = expand::computed(args, item);
    let file: syn::File = syn::parse2(expanded).expect("the expansion parses as items");
    let text = format!(
        "// The expansion of README's `dashboard` (see src/golden.rs).\n{}",
        prettyplease::unparse(&file)
    );
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand/dashboard.expanded.rs");
    // Short enough to read in one screen.
    assert!(
        text.lines().count() <= 140,
        "{} lines",
        text.lines().count()
    );
    if std::env::var_os("SMACHE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text == recorded,
        "#[computed] expands differently from {}; if intended, bless it (SMACHE_BLESS=1). Now:\n{text}",
        path.display()
    );
}
