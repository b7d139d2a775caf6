struct Calculator;

impl Calculator {
    #[smache::computed(Raw)]
    fn double(&self, x: u32) -> u32 {
        x * 2
    }
}

fn main() {}
