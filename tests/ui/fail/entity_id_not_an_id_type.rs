#[derive(smache::Entity)]
#[entity(collection = "readings")]
struct Reading {
    id: f64,
}

fn main() {}
