// The generated client takes a `GetStateRequest` for `system.GetState`: a `WindowReport` is
// refused by the compiler (with the string API it would be encoded and sent).
use peerwire_examples::display::{SystemClient, WindowReport};

async fn call(system: &SystemClient) {
    let _ = system.get_state(&WindowReport::default()).await;
}

// There is no `system.GetStat`: a misspelt method does not exist either.
async fn misspelt(system: &SystemClient) {
    let _ = system.get_stat(&Default::default()).await;
}

fn main() {
    let _ = (call, misspelt);
}
