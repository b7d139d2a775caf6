#[smache::computed(Raw)]
fn describe<'a>(value: &'a str) -> String
where
    'a: 'static,
{
    value.to_owned()
}

fn main() {}
