use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Settings {
    id: String,
}

#[smache::computed(Settings)]
fn theme(settings: &Settings) -> String {
    settings.id.clone()
}

fn main() {
    theme(&Settings { id: String::new() });
}
