#[derive(serde::Serialize)] // but not Deserialize
struct Report {
    total: u32,
}

#[smache::computed(Raw)]
async fn report(x: u32) -> Result<Report, String> {
    Ok(Report { total: x })
}

fn main() {}
