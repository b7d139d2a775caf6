struct Report {
    total: u32,
}

#[smache::computed(Raw)]
fn report(x: u32) -> Report {
    Report { total: x }
}

fn main() {
    let _ = report(1).total;
}
