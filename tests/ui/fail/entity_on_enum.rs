#[derive(smache::Entity)]
#[entity(collection = "shapes")]
enum Shape {
    Circle { id: String },
}

fn main() {}
