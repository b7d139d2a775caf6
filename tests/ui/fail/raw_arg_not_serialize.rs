struct Filter {
    min: u32,
}

#[smache::computed(Raw)]
fn count(filter: &Filter) -> u32 {
    filter.min
}

fn main() {
    count(&Filter { min: 1 });
}
